"""The env health probe, on this interpreter (it is standard library only): imports, installed
versions, and drift against a constraints file."""

from __future__ import annotations

from pathlib import Path

from owllm.inenv.probe import installed, probe, read_constraints


def test_imports_and_versions() -> None:
    packages = installed()
    assert "pytest" in packages
    result = probe("k", ["json", "no_such_module_here"], ["pytest", "Not-Installed"], None)
    assert result["status"] == "FAIL" and result["env_key"] == "k"
    assert [e["module"] for e in result["errors"]] == ["no_such_module_here"]
    assert result["versions"] == {"pytest": packages["pytest"]}
    assert result["drift"] == []


def test_drift_against_constraints(tmp_path: Path) -> None:
    packages = installed()
    pins = tmp_path / "constraints.txt"
    lines = [f"{name}=={version}" for name, version in sorted(packages.items())]
    lines[0] = lines[0].split("==")[0] + "==0.0.0-not-this  # a comment"
    pins.write_text("\n".join(["# header", *lines, "Extra_Pkg[x]==1.0 ; python_version>'3'"]))
    assert read_constraints(str(pins))["extra-pkg"] == "1.0"
    result = probe("k", [], [], str(pins))
    drifted = {d["package"] for d in result["drift"]}
    assert drifted == {lines[0].split("==")[0], "extra-pkg"}
    assert result["status"] == "FAIL"
    assert {e["module"] for e in result["errors"]} == {f"<drift:{p}>" for p in drifted}


def test_missing_constraints_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    result = probe("k", [], [], str(tmp_path / "absent.txt"))
    assert result["status"] == "FAIL"
    assert result["errors"][0]["module"] == "<constraints>"
