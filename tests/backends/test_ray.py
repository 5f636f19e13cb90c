"""``backend: ray`` for real: a local Ray cluster on CPU, started by OWLLM, serving the demo
model as a Ray Serve application with two replicas of half a CPU each.

One cluster for the whole module (it costs most of the module's time): the ``cluster``
fixture starts it through the CLI (``owllm server start``), one test walks it in order
(smokes → kill -9 of a replica → suites → stop), and the fixture's finalizer stops it
anyway and checks that no process OWLLM started for it is left.  The configuration tests
need no cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from owllm.backends.ray import prune_sessions, temp_dir, temp_link
from owllm.config import load_config
from owllm.errors import ConfigError
from owllm.inenv.ray_serve import SERVE_STATUS, owllm_status

REPLICA_MARK = "ServeReplica:demo-ray:"
CONFIG = textwrap.dedent("""\
    models:
      demo-ray:
        base_model: "demo://tiny-llama"
        backend: ray
        device: cpu
        system_prompt: "You are a helpful assistant."
        generation: {max_tokens: 16, temperature: 0.0}
        ray: {address: local, replicas: 2, num_cpus: 0.5, object_store_mb: 100}
    """)


# -- configuration (no cluster) -------------------------------------------------------------

def _problems(tmp_path: Path, entry: str) -> list[str]:
    path = tmp_path / "cfg.yaml"
    path.write_text("models:\n  m:\n" + textwrap.indent(textwrap.dedent(entry), "    "))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


@pytest.mark.parametrize(("entry", "expected"), [
    ("base_model: x\nbackend: ray\nray: {address: 'not an address'}\n",
     "cfg.yaml:5: models.m.ray.address: 'not an address' is not local, auto"),
    ("base_model: x\nbackend: ray\nray: {route_prefix: demo}\n",
     "cfg.yaml:5: models.m.ray.route_prefix: 'demo' must start with '/'"),
    ("base_model: x\nbackend: ray\nray: {replicas: 0}\n",
     "cfg.yaml:5: models.m.ray.replicas: 0 is less than the minimum of 1"),
    ("base_model: x\nbackend: ray\nray: {num_cpus: 0}\n",
     "cfg.yaml:5: models.m.ray.num_cpus:"),
    ("base_model: x\nbackend: ray\nray: {engine: vllm}\n",
     "cfg.yaml:5: models.m.ray.engine: engine: vllm runs on CUDA through ray.serve.llm"),
    ("base_model: x\nbackend: ray\nray: {address: auto, object_store_mb: 100}\n",
     "cfg.yaml:5: models.m.ray.object_store_mb: sizes the head node OWLLM starts"),
    ("base_model: x\nbackend: transformers\nray: {replicas: 2}\n",
     "cfg.yaml:5: models.m.ray: ray: configures backend: ray only, not transformers"),
])
def test_ray_options_are_validated_with_file_and_line(tmp_path: Path, entry: str,
                                                      expected: str) -> None:
    problems = _problems(tmp_path, entry)
    assert any(f"/{expected}" in p for p in problems), problems


def test_fractional_cpus_and_defaults_load(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("models:\n  m: {base_model: x, backend: ray, ray: {num_cpus: 0.5}}\n")
    model = load_config(path).models["m"]
    assert model.ray is not None and model.ray.num_cpus == 0.5
    assert (model.ray.address, model.ray.replicas, model.ray.engine) == (
        "local", 1, "transformers")
    assert model.params()["ray"]["num_cpus"] == 0.5


def test_without_the_extra_a_ray_config_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    """``sys.modules['ray'] = None`` is Python's own way to make a package unimportable:
    the CLI then runs as on a light install."""
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text("models:\n  m: {base_model: x, backend: ray}\n")
    run = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['ray'] = None; "
         "from owllm.cli import main; sys.exit(main())", "--config", str(config),
         "server", "start", "m"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "OWLLM_HOME": str(tmp_path / "home")})
    assert run.returncode == 2, run.stderr
    assert "llm_backends.yaml:2: models.m.backend: backend: ray needs the ray extra" in run.stderr
    assert "pip install 'owllm[ray]'" in run.stderr and "Traceback" not in run.stderr


def test_old_ray_sessions_are_pruned(tmp_path: Path) -> None:
    for age, name in enumerate(["session_a", "session_b", "session_c"]):
        (tmp_path / name / "logs").mkdir(parents=True)
        os.utime(tmp_path / name, (1000 + age, 1000 + age))
    (tmp_path / "session_latest").symlink_to(tmp_path / "session_c")
    removed = prune_sessions(tmp_path, keep=2)
    assert removed == [tmp_path / "session_a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session_b", "session_c",
                                                          "session_latest"]


def test_serve_statuses_map_onto_owllms() -> None:
    assert owllm_status("DEPLOYING") == ("STARTING", False)
    assert owllm_status("RUNNING") == ("RUNNING", True)
    assert owllm_status("UNHEALTHY") == ("RUNNING", False)  # Serve replaces the replica
    assert owllm_status("DEPLOY_FAILED") == ("FAILED", False)  # the driver exits: FAILED/CRASHED
    assert owllm_status("MISSING") == ("STOPPED", False)
    assert {"DEPLOYING", "RUNNING", "UNHEALTHY", "DEPLOY_FAILED"} <= set(SERVE_STATUS)


def test_ray_files_live_under_the_home_through_a_short_link(tmp_path: Path) -> None:
    short = temp_dir(Path("/tmp") / f"r{os.getpid()}")
    assert short == Path("/tmp") / f"r{os.getpid()}" and short.is_dir()
    short.rmdir()
    deep = tmp_path / ("d" * 60) / "home" / ".owllm" / "ray"
    link = temp_dir(deep)
    assert len(str(link)) <= 40 and link.is_symlink() and link.resolve() == deep.resolve()
    assert temp_dir(deep) == link == temp_link(deep)  # stable: the same link each time
    link.unlink()


# -- a real local cluster -------------------------------------------------------------------

def owllm(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "owllm", "--config",
                           str(project / "configs" / "llm_backends.yaml"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=project,
                          env={**os.environ, "OWLLM_HOME": str(project / "home")})


def live(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie is dead: init reaps it)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            continue
    return alive


def with_token(token: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("OWLLM_SERVER_TOKEN") == token:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return live(found)


def replicas(driver: int) -> list[int]:
    found = []
    for proc in psutil.Process(driver).children(recursive=True):
        try:
            if REPLICA_MARK in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return sorted(live(found))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``owllm server start demo-ray``: env, demo model, head node, Serve, 2 replicas."""
    project = tmp_path_factory.mktemp("ray-project")
    (project / "configs").mkdir()
    (project / "configs" / "llm_backends.yaml").write_text(CONFIG)
    start = owllm(project, "server", "start", "demo-ray", "--json")
    assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
    row = json.loads(start.stdout)
    processes = [row["pid"], *psutil.Process(row["pid"]).children(recursive=True)]
    info = {"project": project, "row": row, "pids": [p if isinstance(p, int) else p.pid
                                                     for p in processes]}
    try:
        yield info
    finally:
        owllm(project, "server", "stop", "demo-ray")
        # the short path Ray was given (a tmp home's is too long)
        temp_link(project / "home" / ".owllm" / "ray" / "demo-ray").unlink(missing_ok=True)
        left = live(info["pids"]) + with_token(row["extra"]["token"])
        assert not left, f"processes left after server stop: {left}"


def run_suites(project: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OWLLM_HOME": str(project / "home"),
           # The checkout's root conftest.py would load as an out-of-tree conftest of the
           # suites folder (as in tests/test_plugin.py).
           "PYTEST_ADDOPTS": "--noconftest -p no:cacheprovider"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--owllm-model", "demo-ray",
                           "-n", "2", "-rs", "--junitxml", str(project / "junit.xml")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=project)


@pytest.mark.slow
def test_local_cluster_deploys_validates_heals_and_stops(cluster: dict[str, Any]) -> None:
    """One test, in order, on one cluster: under ``-n 2`` (CI) xdist would deal separate
    tests of this module to both workers, each starting a cluster of its own on 2 cores."""
    deploys_two_replicas_behind_serves_proxy(cluster)
    model_smoke_and_tools_smoke_pass(cluster)
    suites_pass_after_a_replica_is_killed_and_replaced(cluster)
    stop_deletes_the_app_and_leaves_no_process(cluster)


def deploys_two_replicas_behind_serves_proxy(cluster: dict[str, Any]) -> None:
    row = cluster["row"]
    assert (row["status"], row["healthy"]) == ("RUNNING", True)
    assert row["url"] == f"http://127.0.0.1:{row['port']}/demo-ray"  # the route prefix
    assert len(replicas(row["pid"])) == 2
    # the head node's files are under the home
    sessions = list((cluster["project"] / "home" / ".owllm" / "ray" / "demo-ray").glob(
        "session_*"))
    assert sessions, "no Ray session folder under the home"


def model_smoke_and_tools_smoke_pass(cluster: dict[str, Any]) -> None:
    model = owllm(cluster["project"], "model", "smoke", "demo-ray", "--json")
    assert model.returncode == 0, model.stdout + model.stderr
    result = json.loads(model.stdout)
    assert (result["status"], result["reused_running_server"]) == ("PASS", True), result
    tools = owllm(cluster["project"], "tools", "smoke", "demo-ray", "--json")
    assert tools.returncode == 0, tools.stdout + tools.stderr
    outcome = json.loads(tools.stdout)
    assert outcome["status"] == "PASS" and outcome["call"]["tool"] == "calculator", outcome


def suites_pass_after_a_replica_is_killed_and_replaced(cluster: dict[str, Any]) -> None:
    """The smokes above ran against both replicas; one suite run after the kill covers
    "the suites pass" and "pass again" in one (a run costs ~30 s on 2 cores)."""
    project, driver = cluster["project"], cluster["row"]["pid"]
    before = replicas(driver)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # Serve notices and starts a new replica
        now = replicas(driver)
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"Serve did not replace replica {before[0]}: replicas {replicas(driver)}")
    cluster["pids"] += now
    again = run_suites(project)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    junit = (project / "junit.xml").read_text()
    assert 'failures="0"' in junit and 'errors="0"' in junit
    for test in ("test_generate[demo-ray]", "test_tool_round_trip[demo-ray]",
                 "test_constrained_output_is_always_a_valid_call[demo-ray]",
                 "test_greedy_answers_are_reproducible[demo-ray]"):
        assert test in junit, test
    status = json.loads(owllm(project, "server", "status", "demo-ray", "--json").stdout)
    assert [(s["status"], s["healthy"]) for s in status] == [("RUNNING", True)]


def stop_deletes_the_app_and_leaves_no_process(cluster: dict[str, Any]) -> None:
    project, row = cluster["project"], cluster["row"]
    cluster["pids"] += [p.pid for p in psutil.Process(row["pid"]).children(recursive=True)]
    stop = owllm(project, "server", "stop", "demo-ray", "--json")
    assert stop.returncode == 0, stop.stderr
    assert json.loads(stop.stdout)["status"] == "STOPPED"
    assert live(cluster["pids"]) == [] and with_token(row["extra"]["token"]) == []


# -- engine: vllm (CUDA only: skipped here with the plugin's reason) ------------------------

VLLM_ENVS = textwrap.dedent("""\
    version: 1
    keys:
      ray-vllm:
        packages: ["vllm", "ray[serve,llm]==2.60.0"]
        probe_imports: [vllm, ray.serve.llm]
    """)


@pytest.mark.gpu
@pytest.mark.slow
def test_engine_vllm_serves_through_ray_serve_llm(tmp_path: Path) -> None:
    """On a CUDA host: ``engine: vllm`` deploys through ``ray.serve.llm`` (LLMConfig +
    build_openai_app) in an env that holds vllm and ray[llm], and smokes PASS."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "envs.yaml").write_text(VLLM_ENVS)
    (tmp_path / "configs" / "llm_backends.yaml").write_text(textwrap.dedent("""\
        models:
          demo-ray-vllm:
            base_model: "demo://tiny-llama"
            backend: ray
            env_key: ray-vllm
            max_model_len: 1024
            ray: {address: local, replicas: 1, num_gpus: 1, engine: vllm}
        """))
    try:
        start = owllm(tmp_path, "server", "start", "demo-ray-vllm", "--json", timeout=1800)
        assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
        smoke = owllm(tmp_path, "model", "smoke", "demo-ray-vllm", "--json")
        assert json.loads(smoke.stdout)["status"] == "PASS", smoke.stdout
    finally:
        owllm(tmp_path, "server", "stop", "demo-ray-vllm")
