"""The root conftest's clean-tree check: a test run that leaves a file in the git checkout
fails, listing it; a clean run, a folder that is no checkout, and ``--no-clean-tree-check``
pass.  Each case runs the real conftest in a throwaway repository under pytester's tmp path."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

WRITES_INTO_CWD = """
from pathlib import Path

def test_writes_a_file_where_it_runs():
    Path("junk", "Home(root=x)").mkdir(parents=True)
    Path("junk", "Home(root=x)", "state.db").write_text("x")
"""

CLEAN = """
def test_writes_nothing(tmp_path):
    (tmp_path / "fine.txt").write_text("under tmp: fine")
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(ROOT_CONFTEST.read_text(encoding="utf-8"))
    (pytester.path / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    return pytester


def git_init(folder: Path) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    subprocess.run([git, "init", "-q", str(folder)], check=True, timeout=60)


def test_a_file_left_in_the_checkout_fails_the_run(project: pytest.Pytester) -> None:
    git_init(project.path)
    project.makepyfile(test_dirty=WRITES_INTO_CWD)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=1)  # the test itself passes; the run does not
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*the test run left files in the repository*",
                                 "*?? junk/Home(root=x)/state.db*"])


def test_a_clean_run_passes(project: pytest.Pytester) -> None:
    git_init(project.path)
    project.makepyfile(test_clean=CLEAN)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "left files in the repository" not in result.stdout.str()


def test_no_checkout_or_opt_out_skips_the_check(project: pytest.Pytester) -> None:
    project.makepyfile(test_dirty=WRITES_INTO_CWD)
    inside = subprocess.run(["git", "-C", str(project.path), "rev-parse"],
                            capture_output=True, timeout=60) if shutil.which("git") else None
    if inside is not None and inside.returncode == 0:
        pytest.skip(f"{project.path} lies inside a git checkout")
    outside = project.runpytest_subprocess("-p", "no:cacheprovider")
    assert outside.ret == pytest.ExitCode.OK, outside.stdout.str()
    shutil.rmtree(project.path / "junk")

    git_init(project.path)
    opted_out = project.runpytest_subprocess("-p", "no:cacheprovider", "--no-clean-tree-check")
    assert opted_out.ret == pytest.ExitCode.OK, opted_out.stdout.str()
