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
    cli_tools.register(parser.add_subparsers(dest="command", required=True),
                      argparse.ArgumentParser(add_help=False))
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


def test_tools_from_an_owllm_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``--tools llm_backends.yaml`` validates against that config's ``tools:`` entries."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "cli_cfg_tools.py").write_text("def ping(host):\n    return host\n",
                                               encoding="utf-8")
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text("models: {}\ntools:\n  - callable: cli_cfg_tools:ping\n"
                      "    parameters: {type: object, properties: {host: {type: string}},\n"
                      "                 required: [host], additionalProperties: false}\n",
                      encoding="utf-8")
    ok = '{"tool": "ping", "args": {"host": "a"}, "id": "p1"}'
    code, out = run(["validate", "--tools", str(config)], ok, monkeypatch, capsys)
    assert code == 0 and out["calls"] == [json.loads(ok)]
    code, out = run(["validate", "--tools", str(config)],
                    '{"tool": "ping", "args": {"host": "a", "port": 1}, "id": "p1"}',
                    monkeypatch, capsys)
    assert (code, out["error"]["code"], out["error"]["path"]) == (
        1, "unexpected_param", "$.args.port")


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
