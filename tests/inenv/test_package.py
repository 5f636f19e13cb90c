"""The in-env package's one rule: no module in owllm/inenv imports the host-side ``owllm``
(or anything outside the standard library, the env's packages and its own siblings), and
its bootstrap runs a module with nothing of the host importable."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import owllm.inenv
from owllm.envs.runner import inenv_argv
from owllm.inenv import BOOTSTRAP, PACKAGE_DIR, SCRIPTS

MODULES = sorted(Path(PACKAGE_DIR).glob("*.py"))


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import statement, nested ones included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_imports_the_host_package(path: Path) -> None:
    siblings = {p.stem for p in MODULES}
    for level, module in imports_of(path):
        top = module.split(".")[0]
        if level:  # relative: only a sibling module of this package
            assert level == 1 and top in siblings, f"{path.name}: from {'.' * level}{module}"
        else:
            assert top != "owllm", f"{path.name} imports {module} (host-side owllm)"
            assert top != "pytest_owllm", f"{path.name} imports {module}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_sys_path_surgery(path: Path) -> None:
    """Modules never edit sys.path: only the bootstrap takes its folder off it."""
    if path.name == "__main__.py":
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    edits = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and node.attr == "path" and isinstance(node.value, ast.Name)
             and node.value.id == "sys"]
    assert not edits, f"{path.name} touches sys.path at lines {edits}"


def test_every_script_is_a_module_of_the_package() -> None:
    assert {p.stem for p in MODULES} >= set(SCRIPTS)
    with pytest.raises(ValueError, match="not a runnable in-env module"):
        inenv_argv(sys.executable, "../owllm/config")


def test_a_copy_of_the_package_runs_with_nothing_of_the_host(tmp_path: Path) -> None:
    """The folder alone, copied away from OWLLM, under ``-I -S`` (no site-packages, so no
    editable OWLLM either): the probe runs, and ``owllm`` is not importable in it."""
    copy = tmp_path / "somewhere" / "inenv"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(copy / "__main__.py"), "probe", "--key", "k",
         "--imports", "json,openai_helpers,owllm,owllm.inenv"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {e["module"] for e in result["errors"]}
    # neither the host package nor the package's own modules leak onto sys.path
    assert failed == {"owllm", "owllm.inenv", "openai_helpers"}, result["errors"]


def test_bootstrap_runs_relative_imports_and_refuses_unknown_modules() -> None:
    # llamacpp_server imports three siblings relatively at module level (llama_cpp only in
    # main()): --help answering proves they resolved, without llama_cpp or the host.
    done = subprocess.run([sys.executable, "-I", "-S", BOOTSTRAP, "llamacpp_server", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "--config-json" in done.stdout
    for bad in ("nothing_here", "_private", "--help"):
        done = subprocess.run([sys.executable, "-I", BOOTSTRAP, bad], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr


def test_host_imports_the_same_modules() -> None:
    from owllm.inenv import asgi_guard, openai_helpers

    assert openai_helpers.__name__ == "owllm.inenv.openai_helpers"
    assert asgi_guard.__file__ is not None and Path(asgi_guard.__file__).parent == \
        Path(owllm.inenv.__file__).parent
