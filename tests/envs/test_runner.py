"""run_in_env: the one JSON object of an in-env module, or an InEnvError that says which step,
which module, how it ended and what it wrote on stderr.  Real processes: the probe under this
interpreter, and small shell scripts standing in for an env's python that misbehave."""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest

from owllm.envs.runner import inenv_argv, run_in_env
from owllm.errors import InEnvError
from owllm.inenv import BOOTSTRAP


def fake_python(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_probe_returns_its_json() -> None:
    result = run_in_env(sys.executable, "probe", ["--key", "k", "--imports", "json"],
                        env_key="k")
    assert result["status"] == "PASS" and result["env_key"] == "k"


def test_a_probe_that_reports_fail_is_a_result_not_an_error() -> None:
    result = run_in_env(sys.executable, "probe", ["--key", "k", "--imports", "no_such_mod"])
    assert result["status"] == "FAIL" and result["errors"][0]["module"] == "no_such_mod"


def test_non_zero_exit_names_step_module_env_and_stderr(tmp_path: Path) -> None:
    python = fake_python(tmp_path, 'echo "partial" ; echo "Boom: the cause" >&2 ; exit 3')
    with pytest.raises(InEnvError) as info:
        run_in_env(python, "demo_model", ["--out", "x"], env_key="torch-cpu",
                   what="building demo model demo://tiny-llama")
    err = info.value
    assert (err.script, err.returncode, err.env_key) == ("demo_model", 3, "torch-cpu")
    assert err.stderr == "Boom: the cause"
    text = str(err)
    assert "building demo model demo://tiny-llama" in text and "exited with code 3" in text
    assert "Boom: the cause" in text


def test_death_by_signal(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "kill -9 $$")
    with pytest.raises(InEnvError, match="killed by signal 9") as info:
        run_in_env(python, "gguf_convert")
    assert info.value.returncode == -9


def test_timeout_kills_and_raises(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "echo started >&2; exec sleep 30")
    started = time.monotonic()
    with pytest.raises(InEnvError, match=r"did not finish in 0\.5s") as info:
        run_in_env(python, "probe", timeout=0.5)
    assert time.monotonic() - started < 10
    assert info.value.returncode is None


@pytest.mark.parametrize("stdout", ["", "not json", "[1, 2]", '{"a": 1} trailing'])
def test_no_json_object_on_stdout(tmp_path: Path, stdout: str) -> None:
    python = fake_python(tmp_path, f"printf '%s\\n' '{stdout}'")
    with pytest.raises(InEnvError, match="printed no JSON object") as info:
        run_in_env(python, "probe")
    assert info.value.returncode == 0


def test_last_line_is_the_result(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "echo 'a library says hello'; echo '{\"ok\": true}'; echo")
    assert run_in_env(python, "probe") == {"ok": True}


def test_a_python_that_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(InEnvError, match="could not start"):
        run_in_env(tmp_path / "missing" / "python", "probe", env_key="k")


def test_argv_runs_the_bootstrap_isolated_on_request(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert inenv_argv("py", "transformers_app", "--port", "1") == \
        ("py", BOOTSTRAP, "transformers_app", "--port", "1")
    assert inenv_argv("py", "probe", isolated=True)[1] == "-I"
    # the caller's PYTHONPATH never reaches the script
    python = fake_python(tmp_path, 'printf \'{"pp": "%s"}\\n\' "$PYTHONPATH"')
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    assert run_in_env(python, "probe") == {"pp": ""}
