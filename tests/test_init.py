"""``owllm init``: the starter files, their validity, and that nothing is ever overwritten."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from owllm.cli import main
from owllm.config import ModelConfig, load_config

IDS = "pytest_owllm/suites"


def init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    code = main(["init", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_init_writes_a_starter_project_whose_config_validates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "new" / "project"  # created, parents included
    code, result, _ = init(capsys, str(project))
    assert code == 0
    assert result["written"] == ["configs/llm_backends.yaml", "model_suites/test_my_answers.py",
                                 "pytest.ini"]
    assert result["project"] == str(project)
    assert result["next"][-1] == "pytest --owllm-model demo -n 2 --junitxml=report.xml"
    config = load_config(project / "configs" / "llm_backends.yaml")
    demo = config.models["demo"]
    assert list(config.models) == ["demo"]
    assert (demo.base_model, demo.backend, demo.device) == ("demo://tiny-llama",
                                                            "transformers", "cpu")
    text = (project / "configs" / "llm_backends.yaml").read_text()
    for field in dataclasses.fields(ModelConfig):  # every field is there, with its comment
        if field.name not in ("model_id", "line"):
            line = next(x for x in text.splitlines() if f" {field.name}:" in x)
            assert "#" in line or text.splitlines()[text.splitlines().index(line) - 1] \
                .lstrip().startswith("#"), line
    suite = (project / "model_suites" / "test_my_answers.py").read_text()
    compile(suite, "test_my_answers.py", "exec")
    assert "owllm_server" in suite and "owllm_model_id" in suite
    assert "owllm_suites = true" in (project / "pytest.ini").read_text()
    assert result["pytest_settings"]["written"] is True


def test_init_defaults_to_the_working_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, result, _ = init(capsys)
    assert code == 0 and (tmp_path / "configs" / "llm_backends.yaml").is_file()
    assert result["next"] == ["pytest --owllm-model demo -n 2 --junitxml=report.xml"]


def test_init_refuses_to_overwrite_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "configs").mkdir()
    mine = tmp_path / "configs" / "llm_backends.yaml"
    mine.write_text("models: {}\n")
    code, result, err = init(capsys, str(tmp_path))
    assert code == 2
    assert result["error"]["type"] == "UsageError"
    assert "configs/llm_backends.yaml already exists" in err
    assert mine.read_text() == "models: {}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]  # nothing else written
    # the example suite is protected the same way
    mine.unlink()
    (tmp_path / "model_suites").mkdir()
    (tmp_path / "model_suites" / "test_my_answers.py").write_text("# mine\n")
    code, _, err = init(capsys, str(tmp_path))
    assert code == 2 and "model_suites/test_my_answers.py already exists" in err
    assert not mine.exists()


def test_init_leaves_an_existing_pytest_configuration_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "mine"\nversion = "1"\n')
    code, result, err = init(capsys, str(tmp_path))
    assert code == 0
    assert pyproject.read_text() == '[project]\nname = "mine"\nversion = "1"\n'
    assert not (tmp_path / "pytest.ini").exists()
    assert result["written"] == ["configs/llm_backends.yaml", "model_suites/test_my_answers.py"]
    settings = result["pytest_settings"]
    assert settings["file"] == "pyproject.toml" and settings["written"] is False
    assert settings["lines"].startswith("[tool.pytest.ini_options]\n")
    assert settings["lines"] in err  # told what to add, on stderr


@pytest.mark.parametrize("layout", ["pytest.ini", "pyproject.toml"])
def test_the_initialised_project_runs_the_builtin_suites(
        layout: str, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With init's settings (written, or added to pyproject.toml as printed), a plain
    ``pytest`` collects the built-in suites and the example suite for the demo model."""
    monkeypatch.setenv("OWLLM_HOME", str(pytester.path / "home"))
    # The editable install's suites live in this checkout, whose conftest.py pytest would
    # load as an out-of-tree conftest (an installed wheel has none above its suites).
    monkeypatch.setenv("PYTEST_ADDOPTS", "--noconftest -p no:cacheprovider")
    if layout == "pyproject.toml":
        (pytester.path / "pyproject.toml").write_text('[project]\nname = "mine"\n')
    code, result, _ = init(capsys, str(pytester.path))
    assert code == 0
    if layout == "pyproject.toml":
        with open(pytester.path / "pyproject.toml", "a") as handle:
            handle.write(result["pytest_settings"]["lines"])
    run = pytester.runpytest_subprocess("--collect-only", "-q")
    items = [line for line in run.outlines if "::" in line]
    assert "model_suites/test_my_answers.py::test_answers_a_question[demo]" in items
    assert f"{IDS}/test_env.py::test_env_health[torch-cpu-transformers]" in items
    for name in ("test_model.py::test_generate", "test_tools.py::test_tool_round_trip",
                 "test_fuzz.py::test_constrained_output_is_always_a_valid_call"):
        assert f"{IDS}/{name}[demo]" in items
