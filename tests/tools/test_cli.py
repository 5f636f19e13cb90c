"""``owllm tools validate``: through register() on an argparse parser, and as a process."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from owllm.cli import tools as cli_tools
from owllm.errors import OwllmError

REPO = Path(__file__).resolve().parents[2]
GOOD = '{"tool": "calculator", "args": {"expression": "42*17"}, "id": "c1"}'


def run(argv: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    parser = argparse.ArgumentParser(prog="owllm tools")
    cli_tools.register(parser.add_subparsers(dest="command", required=True))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    try:
        args = parser.parse_args(argv)
        code = args.func(args)
    except OwllmError as exc:
        return exc.exit_code, None
    return code, json.loads(capsys.readouterr().out)


def test_valid(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["validate"], GOOD + "\n", monkeypatch, capsys)
    assert code == 0
    assert out == {"valid": True, "calls": [{"tool": "calculator",
                                             "args": {"expression": "42*17"}, "id": "c1"}]}


def test_invalid(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["validate"], "```json\n" + GOOD + "\n```", monkeypatch, capsys)
    assert code == 1
    assert out["valid"] is False and out["error"]["code"] == "invalid_json"
    assert set(out["error"]) == {"code", "path", "message"}


def test_tools_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    specs = tmp_path / "tools.json"
    specs.write_text(json.dumps({"tools": [{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object", "properties": {
            "key": {"type": "string"}}, "required": ["key"]}}}]}), encoding="utf-8")
    code, out = run(["validate", "--tools", str(specs)],
                    '{"tool": "lookup", "args": {}, "id": "1"}', monkeypatch, capsys)
    assert (code, out["error"]["code"], out["error"]["path"]) == (
        1, "missing_required", "$.args.key")
    code, out = run(["validate", "--tools", str(specs)], GOOD, monkeypatch, capsys)
    assert (code, out["error"]["code"]) == (1, "unknown_tool")


@pytest.mark.parametrize("content", [None, "tools: 5", "[{name: '9'}]", "{{{"])
def test_unusable_tools_file_is_a_usage_error(
        tmp_path: Path, content: str | None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tools.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, _ = run(["validate", "--tools", str(path)], GOOD, monkeypatch, capsys)
    assert code == 2


@pytest.mark.skipif(not (REPO / "owllm" / "cli" / "__init__.py").exists(),
                    reason="owllm/cli/__init__.py (the lead's) is not there yet")
def test_as_a_process() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for stdin, expected in ((GOOD, 0), ("calculator(expression='1')", 1)):
        done = subprocess.run([sys.executable, "-m", "owllm", "tools", "validate"],
                              input=stdin.encode(), capture_output=True, env=env, timeout=60)
        assert done.returncode == expected, done.stderr.decode()
        assert json.loads(done.stdout)["valid"] is (expected == 0)
    done = subprocess.run([sys.executable, "-m", "owllm", "tools", "validate", "--tools",
                           "/nonexistent/tools.yaml"], input=b"{}", capture_output=True,
                          env=env, timeout=60)
    assert done.returncode == 2
