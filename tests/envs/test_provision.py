"""Real envs built by the real installer (uv; pip fallback) from a tiny envs.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from owllm.envs import EnvRegistry, layout
from owllm.errors import EnvError
from owllm.state_store import ENV_FAILED, ENV_READY


def builds(registry: EnvRegistry, key: str) -> int:
    return len(registry.store.list_events(kind="env", subject=key, status="BUILD_STARTED",
                                          limit=1000))


def test_build_publish_and_console_scripts(registry: EnvRegistry) -> None:
    env = registry.ensure_env("tiny")
    assert env.path == registry.home.envs_dir / "tiny" and env.path.is_symlink()
    assert env.python_executable == env.path / ".venv" / "bin" / "python"
    assert env.packages["six"] and env.packages["tabulate"]
    row = registry.store.get_env("tiny")
    assert row is not None and row["status"] == ENV_READY and row["fingerprint"]
    # A venv embeds absolute paths: both `python -m` and console scripts work when published.
    scripts = env.path / ".venv" / "bin"
    out = subprocess.run([str(scripts / "tabulate"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage: tabulate" in out.stdout
    out = subprocess.run([str(scripts / "pip"), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and str(registry.home.envs_dir) in out.stdout
    out = subprocess.run([str(env.python_executable), "-m", "pip", "--version"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and str(env.path) in out.stdout
    pins = registry.constraints_path("tiny").read_text()
    assert f"six=={env.packages['six']}" in pins
    assert builds(registry, "tiny") == 1
    assert not list(registry.home.envs_tmp_dir.iterdir())


def test_fast_path_runs_no_subprocess(registry: EnvRegistry,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = registry.ensure_env("tiny")

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("subprocess on the fast path")

    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(subprocess, "run", forbidden)
    fresh = EnvRegistry(home=registry.home, envs_config_path=registry.envs_config.path,
                        profile=registry.profile, progress=False)
    assert fresh.ensure_env("tiny") == first


def test_corrupted_env_fails_probe_and_is_rebuilt(registry: EnvRegistry) -> None:
    env = registry.ensure_env("tiny")
    site = next((env.path / ".venv" / "lib").glob("python*/site-packages"))
    (site / "six.py").unlink()
    probe = registry.probe("tiny")
    assert probe["status"] == "FAIL"
    assert any(e["module"] == "six" for e in probe["errors"])
    assert any(d["package"] == "six" for d in probe["drift"]) or probe["errors"]
    rebuilt = registry.ensure_env("tiny", verify=True)
    assert registry.probe("tiny")["status"] == "PASS"
    assert builds(registry, "tiny") == 2 and rebuilt.path.resolve() != site.parents[3]
    assert len(list((registry.home.envs_dir / ".store").iterdir())) == 1


def test_drift_is_reported(registry: EnvRegistry) -> None:
    env = registry.ensure_env("tiny")
    subprocess.run([str(env.python_executable), "-m", "pip", "uninstall", "-y", "-q",
                    "tabulate"], check=True, capture_output=True)
    probe = registry.probe("tiny")
    assert probe["status"] == "FAIL"
    assert {"package": "tabulate", "expected": env.packages["tabulate"],
            "installed": None} in probe["drift"]


def test_changed_spec_rebuilds_with_diff(registry: EnvRegistry, tiny_envs: Path) -> None:
    registry.ensure_env("tiny")
    tiny_envs.write_text(tiny_envs.read_text().replace("packages: [six, tabulate]",
                                                       "packages: [six, tabulate, packaging]"))
    changed = EnvRegistry(home=registry.home, envs_config_path=tiny_envs,
                          profile=registry.profile, progress=False)
    env = changed.ensure_env("tiny")
    assert "packaging" in env.packages and builds(changed, "tiny") == 2
    events = changed.store.list_events(kind="env", subject="tiny", limit=100)
    diffs = [e for e in events if (e.get("message") or "").startswith("spec changed")]
    assert diffs and diffs[0]["data"]["diff"]["packages"]["new"][-1] == "packaging"


def test_from_constraints_reproduces_the_freeze(registry: EnvRegistry) -> None:
    first = registry.ensure_env("tiny")
    again = registry.ensure_env("tiny", from_constraints=True)
    assert again.packages == first.packages and builds(registry, "tiny") == 2
    assert registry.probe("tiny")["status"] == "PASS"


def test_failed_build_records_error_and_leaves_nothing(tmp_home: Path, tmp_path: Path) -> None:
    envs = tmp_path / "bad.yaml"
    envs.write_text(textwrap.dedent("""\
        version: 1
        backends: {}
        keys:
          broken: {packages: [owllm-no-such-package-xyz==9.9]}
        """))
    registry = EnvRegistry(home=tmp_home, envs_config_path=envs, progress=False)
    with pytest.raises(EnvError):
        registry.ensure_env("broken")
    row = registry.store.get_env("broken")
    assert row is not None and row["status"] == ENV_FAILED and row["last_error"]
    assert not (registry.home.envs_dir / "broken").exists()
    assert not list((registry.home.envs_dir / ".store").iterdir())


RACE = """
import sys
from owllm.envs import EnvRegistry
from owllm.hardware import HardwareProfile
r = EnvRegistry(home=sys.argv[1], envs_config_path=sys.argv[2], profile=HardwareProfile(),
                progress=False)
print(r.ensure_env("tiny").python_executable)
"""


def test_four_processes_race_for_one_env(registry: EnvRegistry, tiny_envs: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(registry.home.root), str(tiny_envs)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({o.strip() for o, _ in outs}) == 1
    assert builds(registry, "tiny") == 1
    assert registry.store.get_env("tiny")["status"] == ENV_READY  # type: ignore[index]


def test_pip_fallback(registry: EnvRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWLLM_INSTALLER", "pip")
    env = registry.ensure_env("tiny")
    assert (env.path / ".venv" / "bin" / "tabulate").exists()
    assert registry.probe("tiny")["status"] == "PASS"


def test_remove(registry: EnvRegistry) -> None:
    registry.ensure_env("tiny")
    assert registry.remove("tiny")
    assert not (registry.home.envs_dir / "tiny").exists()
    assert registry.store.get_env("tiny") is None
    assert not list((registry.home.envs_dir / ".store").iterdir())
    assert layout.published_keys(registry.home) == []
